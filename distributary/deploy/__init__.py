"""Internal: deploying clusters (SpecCluster in ``spec``, LocalCluster in ``local``,
Adaptive in ``adaptive``, SSHCluster in ``ssh``); the public names are those of the
``distributary`` package."""
