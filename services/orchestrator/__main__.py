from services.orchestrator.server import main

main()
