from models_registry.cli import main

main()
