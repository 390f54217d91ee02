"""The charrnn command line (typer): main.py has the app and train, serve, info, plot,
export; generate.py and evaluate.py the rest."""
