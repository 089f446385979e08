"""What every layer may lean on: where a sweep keeps its state (places), the one home of Ray's private API
(ray_adapter), the command line as typed."""
