import numpy as np
import pandas as pd
import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["np"] = np
    import specgrad.optim

    doctest_namespace["specgrad"] = specgrad
    doctest_namespace["pd"] = pd
