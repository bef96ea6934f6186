"""The recipe: schema (pydantic), loading with line-numbered errors, --set overrides."""
