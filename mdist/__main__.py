from mdist.cli import main

main(prog_name="mdist")
