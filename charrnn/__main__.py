from charrnn.cli.main import app

app(prog_name="charrnn")
