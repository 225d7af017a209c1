"""How edgekit reaches a device: this machine or a device over OpenSSH, behind one `Target` interface."""
