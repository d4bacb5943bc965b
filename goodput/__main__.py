from goodput.cli import main

main()
