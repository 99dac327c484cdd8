from cmrstudio.cli import main

main()
