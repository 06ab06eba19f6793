"""Follow-up comparison of a prior and a current case: alignment, lesion matching, changes, response."""
