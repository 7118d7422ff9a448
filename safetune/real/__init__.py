"""A real pretrained chat model through the whole workflow: SmolLM2-135M-Instruct from its GGUF
package, safety-aligned by safetune on public data, then protected during fine-tuning."""
