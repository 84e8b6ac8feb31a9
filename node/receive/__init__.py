"""Receiving: the Storage SCP, connection screening, pynetdicom adaptations, disk guard, watch-folder import."""
