"""The paper's video-QA benchmarks: their published annotation files -> project manifests (`convert`), and the
multiple-choice answer extraction users compare with (`answers`)."""
