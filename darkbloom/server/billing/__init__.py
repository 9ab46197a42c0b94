"""Money: the double-entry ledger's arithmetic, pricing, the billing request hook, Stripe."""
