from mdist.cli import main

main()
