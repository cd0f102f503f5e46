"""Frechet Audio Distance (Kilgour et al. 2019) between two sets of audio embeddings, as an `evaluate` metric.

    import evaluate
    fad = evaluate.load("metrics/frechet_audio_distance")       # a local folder: works offline
    fad.compute(predictions=[generated], references=[reference], embedding="dac-encoder-latents")

`generated` (n, d) and `reference` (m, d) are embedding sets (rows are embedding vectors, e.g. one per codec frame);
n and m may differ. Several examples per argument are pooled: all prediction rows form one set, all reference rows the
other. Each set is fitted with a Gaussian (mean, covariance) and the distance between the fits is

    FAD = |mu_p - mu_r|^2 + tr(S_p + S_r - 2 (S_p S_r)^(1/2)).

The embedding space decides what the number means; name it with `embedding=` and it is returned with the score.
The module needs only numpy and evaluate, so it can be pushed to the Hub as it is.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: embeddings of the generated audio, a list of (n_i, d) arrays (pooled into one set).
    references: embeddings of the reference audio, a list of (m_j, d) arrays (pooled into one set).
    embedding: name of the embedding space (returned with the score, so numbers from different spaces are not mixed).
Returns:
    frechet_audio_distance: the distance between the Gaussian fits (0 for identical sets).
    num_predictions, num_references: rows in each set; embedding: the name given.
Examples:
    >>> fad = evaluate.load("metrics/frechet_audio_distance")
    >>> clips = [[[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]]
    >>> fad.compute(predictions=clips, references=clips)
    {'frechet_audio_distance': 0.0, 'num_predictions': 3, 'num_references': 3, 'embedding': 'unnamed'}
"""
_CITATION = """
@inproceedings{kilgour2019frechet,
  title={Fr{\\'e}chet Audio Distance: A Reference-Free Metric for Evaluating Music Enhancement Algorithms},
  author={Kilgour, Kevin and Zuluaga, Mauricio and Roblek, Dominik and Sharifi, Matthew},
  booktitle={Interspeech}, year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FrechetAudioDistance(evaluate.Metric):
    def _info(self):
        embeddings = datasets.Sequence(datasets.Sequence(datasets.Value("float64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": embeddings, "references": embeddings}),
            reference_urls=["https://arxiv.org/abs/1812.08466"],
        )

    def _compute(self, predictions, references, embedding="unnamed"):
        generated, reference = pooled_rows(predictions), pooled_rows(references)
        return {
            "frechet_audio_distance": frechet_distance(gaussian_fit(generated), gaussian_fit(reference)),
            "num_predictions": len(generated),
            "num_references": len(reference),
            "embedding": embedding,
        }


def pooled_rows(sets):
    """One (n, d) float64 array from a list of (n_i, d) arrays."""
    arrays = [np.asarray(rows, dtype=np.float64).reshape(len(rows), -1) for rows in sets if len(rows)]
    if not arrays:
        raise ValueError("an embedding set is empty")
    if len({array.shape[1] for array in arrays}) > 1:
        raise ValueError(f"embeddings of different sizes: {sorted({array.shape[1] for array in arrays})}")
    return np.concatenate(arrays)


def gaussian_fit(embeddings):
    """(mean, covariance) of an (n, d) set, n >= 2 (the unbiased covariance, as in the reference implementation)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise ValueError(f"need an (n, d) embedding set with n >= 2, got shape {embeddings.shape}")
    return embeddings.mean(axis=0), np.cov(embeddings, rowvar=False).reshape(embeddings.shape[1], -1)


def frechet_distance(fit_a, fit_b):
    """Frechet distance between Gaussians (mean, covariance).

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which
    has the same eigenvalues as S_a S_b but is symmetric positive semi-definite, so no complex parts or failed
    square roots arise when the covariances are singular (fewer rows than dimensions).
    """
    (mean_a, cov_a), (mean_b, cov_b) = fit_a, fit_b
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_of_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_of_root
    return float(max(distance, 0.0))


def _psd_sqrt(matrix):
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
