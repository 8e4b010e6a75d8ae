"""Wire formats shared by device, fleet, firmware and training. Depends on pydantic only; imports nothing of ours."""
