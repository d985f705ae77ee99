"""daoflow-operator: restores data from backups on Kubernetes."""

__version__ = "0.1.0"
