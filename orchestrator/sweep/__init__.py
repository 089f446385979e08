"""The sweep engine: the driver (launch, resume), the Optuna/ASHA search, preview, and Ray set-up."""
