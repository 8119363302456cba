from streamapp.runtime.cli import main

main()
