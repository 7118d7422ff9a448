from safetune.cli import main

main()
