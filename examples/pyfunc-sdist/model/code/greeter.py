"""Model code shipped in the model's code/ directory (mlflow code_paths).

The model parses each request row as a small command line with docopt (a dependency published
only as an sdist) and greets from a phrasebook stored as a model artifact.
"""

import json

import mlflow.pyfunc
from docopt import docopt

USAGE = """Usage:
  greet <name> [--lang=<lang>] [--shout]
"""


class Greeter(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        with open(context.artifacts["phrasebook"], encoding="utf-8") as f:
            self.phrases = json.load(f)

    def predict(self, context, model_input, params=None):
        out = []
        for command in model_input["command"]:
            args = docopt(USAGE, argv=command.split()[1:])
            text = f"{self.phrases[args['--lang'] or 'en']}, {args['<name>']}!"
            out.append(text.upper() if args["--shout"] else text)
        return out
