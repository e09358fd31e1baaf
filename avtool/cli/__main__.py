from avtool.cli import main

main()
