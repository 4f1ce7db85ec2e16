"""The estimator: SGLD sampling, the LLC estimate and its diagnostics, closed forms to check it against."""
