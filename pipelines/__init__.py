"""Everything that touches data or engines: stores, capture, tables, engine adapters, CLI."""
