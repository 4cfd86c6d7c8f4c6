from streamchar.cli import main

main()
