"""Writes to keys, by concern; each an explicit, audited transition.

- `deks`: data keys (bootstrap, rotate, retire, rewrap one, vendor root rewrap)
- `sources`: register, test and enable a customer key source
- `uploads`: import parameters and wrapped-key upload
- `registration`: Azure Key Vault and KMIP settings, validated then saved
- `health`: the key health check's transitions
- `rotation`: confirm or reject a rotation, rewrap, rotate now, switch keys
- `lifecycle`: revoke, restore, destroy, remove BYOK, a data move's end
"""
