"""HTTP layer: dependencies, schemas and one router module per resource."""
