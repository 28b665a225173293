"""Who may use the service and how much: plans (limits set in configuration), tenants and their API
keys (``store``), the short-lived access tokens a tenant's backend mints for browsers (``tokens``),
and the concurrent-call and minute limits with the metering behind them."""
