from services.renderer.server import main

main()
