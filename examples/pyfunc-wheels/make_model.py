"""Make a model whose libraries are bundled in it, the way `mlflow.models.add_libraries_to_model` does.

    bash make_venv.sh                                   # python 3.11, mlflow==3.17.2, roman, pip
    /var/tmp/pyfunc-wheels-venv/bin/python make_model.py [OUT_DIR]

A small pyfunc (integers -> Roman numerals with the `roman` package) is logged and registered
(sqlite registry in a temporary directory), then `add_libraries_to_model` re-logs it with every
requirement downloaded as a wheel into the model's `wheels/` directory and requirements.txt
rewritten to point at those files. The wheeled version is downloaded to OUT_DIR/model (default:
next to this file) and predictions.json is written next to it.

MLFLOW_WHEELED_MODEL_PIP_DOWNLOAD_OPTIONS=--no-deps (one of the options MLflow allows) keeps the
bundle to the logged requirements themselves (mlflow, roman) instead of the whole dependency
closure of mlflow (hundreds of MB). The bundled mlflow wheel alone is ~30 MB, which is why the
model directory is generated (by this script, unedited) rather than committed.
"""

import json
import os
import shutil
import sys
import tempfile
from importlib.metadata import version

os.environ.setdefault("MLFLOW_WHEELED_MODEL_PIP_DOWNLOAD_OPTIONS", "--no-deps")

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = pd.DataFrame({"n": [1, 4, 1987, 2026]})


class Roman(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        import roman

        return [roman.toRoman(int(n)) for n in model_input["n"]]


def main(out: str) -> None:
    model_dir = os.path.join(out, "model")
    with tempfile.TemporaryDirectory(prefix="lockbuild-wheeled-") as tmp:
        os.chdir(tmp)  # the default artifact root ./mlruns lands here
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="model", python_model=Roman(), input_example=EXAMPLE,
                                    pip_requirements=[f"roman=={version('roman')}"],
                                    registered_model_name="roman")
        wheeled = mlflow.models.add_libraries_to_model("models:/roman/1")
        if os.path.exists(model_dir):
            shutil.rmtree(model_dir)
        local = mlflow.artifacts.download_artifacts(f"models:/roman/{wheeled.registered_model_version}",
                                                    dst_path=os.path.join(tmp, "download"))
        shutil.copytree(local, model_dir)
        preds = list(mlflow.pyfunc.load_model(model_dir).predict(EXAMPLE))
    body = {"dataframe_split": {"columns": ["n"], "data": [[int(n)] for n in EXAMPLE["n"]]}}
    with open(os.path.join(out, "predictions.json"), "w") as f:
        json.dump({"input": body, "predictions": preds}, f, indent=2)
        f.write("\n")
    print("mlflow", mlflow.__version__, "| predictions:", preds)
    print(open(os.path.join(model_dir, "requirements.txt")).read())


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else HERE)
