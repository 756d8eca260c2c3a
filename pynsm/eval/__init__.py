"""Evaluate learned representations: embeddings, linear and k-shot probes, kNN.

* :func:`extract_embeddings` runs a model over a labelled dataset (streamed into
  one preallocated array);
* :func:`linear_probe_accuracy` fits a logistic regression on all training labels;
* :func:`fewshot_probe_accuracy` fits it on ``k`` labels per class (label
  efficiency, mean over seeded draws);
* :func:`knn_accuracy` votes among the nearest training samples in cosine
  similarity.

The probes use scikit-learn for small problems and a torch L-BFGS solver of the
same objective for large ones (:func:`fit_logistic_regression`), so evaluating
60,000 images takes seconds and memory proportional to the features.
"""

from pynsm.eval.embeddings import extract_embeddings
from pynsm.eval.knn import knn_accuracy
from pynsm.eval.logistic import fit_logistic_regression
from pynsm.eval.probes import fewshot_probe_accuracy, linear_probe_accuracy

__all__ = [
    "extract_embeddings",
    "linear_probe_accuracy",
    "fewshot_probe_accuracy",
    "knn_accuracy",
    "fit_logistic_regression",
]
