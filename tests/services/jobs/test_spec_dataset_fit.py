"""A training job whose model does not fit its data set is refused at submission (422), as `bpbench run`
refuses it, naming the widths the data set needs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.jobs.spec import JobSpec
from tests.support import apiserver
from tests.support.apiserver import ApiServer

api = apiserver.api


@pytest.mark.parametrize(
    ("layers", "dataset", "message"),
    [
        (
            [100, 50, 10],
            "mnist5k",
            "dataset mnist5k has 784 input features per sample; model.layers starts with 100",
        ),
        ([784, 50, 3], "mnist5k", "dataset mnist5k has 10 classes; model.layers ends with 3 (use ...,10)"),
        (
            [784, 50, 10],
            "digits",
            "dataset digits has 64 input features per sample; model.layers starts with 784",
        ),
        ([3, 8, 3], "spiral", "dataset spiral has 2 input features per sample; model.layers starts with 3"),
    ],
)
def test_a_model_that_does_not_fit_its_dataset_is_refused(
    layers: list[int], dataset: str, message: str
) -> None:
    with pytest.raises(
        ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        JobSpec.model_validate(
            {"kind": "train", "model": {"name": "mlp", "layers": layers}, "dataset": dataset}
        )


def test_kinds_with_random_inputs_and_fitting_models_are_accepted() -> None:
    JobSpec.model_validate({"kind": "gradcheck", "model": {"name": "mlp", "layers": [10, 5, 3]}})
    JobSpec.model_validate(
        {"kind": "train", "model": {"name": "mlp", "layers": [64, 32, 10]}, "dataset": "digits"}
    )
    JobSpec.model_validate({"kind": "train", "model": {"name": "simple_convnet"}, "dataset": "digits"})
    JobSpec.model_validate(
        {"kind": "train", "model": {"name": "mlp", "layers": [37, 5]}, "dataset": "synthetic"}
    )


def test_the_api_answers_a_shape_mismatch_with_a_422(api: ApiServer) -> None:
    body = {"kind": "train", "model": {"name": "mlp", "layers": [100, 50, 10]}, "dataset": "mnist5k"}
    with api.client() as client:
        response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert (
        "dataset mnist5k has 784 input features per sample; model.layers starts with 100 (use 784,...)"
        in (response.json()["message"])
    )
