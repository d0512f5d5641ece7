"""HTTP in: dockerd's remote-driver calls become typed requests here, refused at once when malformed."""
