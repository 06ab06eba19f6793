"""Side-by-side timing of the bundle's own inference against ours (``pancreas-dints benchmark``): the driver
(:mod:`.compare`) and the timed subprocess runs (:mod:`.workers`)."""
