"""Make the custom pyfunc example the way a user would: MLflow's defaults, nothing hand-pinned.

    bash make_venv.sh            # a throwaway venv: python 3.11, mlflow==3.17.2, docopt==0.6.2
    /var/tmp/pyfunc-sdist-venv/bin/python make_model.py

The model has
  * code_paths: src/greeter.py becomes code/greeter.py; the pickled Greeter refers to it by module
    name, so MLflow's loader must put code/ on sys.path first (as the scoring server does);
  * an artifact: src/phrasebook.json;
  * a source-only dependency: docopt==0.6.2 exists on PyPI only as an sdist; MLflow infers it
    (requirements.txt is left to MLflow's inference).
Writes model/ and predictions.json ({"input": ..., "predictions": ...}) next to this file.
"""

import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "model")
sys.path.insert(0, os.path.join(HERE, "src"))

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from greeter import Greeter  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402

EXAMPLE = pd.DataFrame({"command": ["greet Ada", "greet Linus --lang=de --shout", "greet Grace --lang=fr"]})


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lockbuild-example-mlruns-") as tracking:
        mlflow.set_tracking_uri("file://" + tracking)
        if os.path.exists(MODEL_DIR):
            shutil.rmtree(MODEL_DIR)
        model = Greeter()
        signature = infer_signature(EXAMPLE, ["x"] * len(EXAMPLE))
        mlflow.pyfunc.save_model(
            MODEL_DIR,
            python_model=model,
            artifacts={"phrasebook": os.path.join(HERE, "src", "phrasebook.json")},
            code_paths=[os.path.join(HERE, "src", "greeter.py")],
            signature=signature,
            input_example=EXAMPLE,
        )
        loaded = mlflow.pyfunc.load_model(MODEL_DIR)
        preds = list(loaded.predict(EXAMPLE))
    body = {"dataframe_split": EXAMPLE.to_dict(orient="split")}
    body["dataframe_split"].pop("index", None)
    with open(os.path.join(HERE, "predictions.json"), "w") as f:
        json.dump({"input": body, "predictions": preds}, f, indent=2)
        f.write("\n")
    print("mlflow", mlflow.__version__, "| predictions:", preds)
    print(open(os.path.join(MODEL_DIR, "requirements.txt")).read())


if __name__ == "__main__":
    main()
