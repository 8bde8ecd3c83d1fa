"""Reading, generating and augmenting images and masks."""
