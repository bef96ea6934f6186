from mobilec.cli import main

main()
