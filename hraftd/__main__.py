from hraftd.cli import main

main()
