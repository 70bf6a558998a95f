"""`python -m appliance` runs the same CLI as the `appliance` console script."""

from appliance.cli import main

raise SystemExit(main())
