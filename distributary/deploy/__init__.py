"""Internal: deploying clusters (LocalCluster, in ``local``); the public names are
those of the ``distributary`` package."""
