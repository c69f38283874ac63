"""RSA keys for DKIM tests, made in pure Python: the venv has no `cryptography`, and dkimpy's
dknewkey runs the openssl command. A seeded generator, so a failure is reproducible; a
1024-bit key takes well under a second."""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass


def _probable_prime(bits: int, rng: random.Random) -> int:
    small = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)
    for _ in range(100_000):
        candidate = rng.getrandbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if any(candidate % p == 0 for p in small):
            continue
        d, s = candidate - 1, 0
        while d % 2 == 0:
            d, s = d // 2, s + 1
        for _ in range(24):  # Miller-Rabin rounds
            x = pow(rng.randrange(2, candidate - 1), d, candidate)
            if x in (1, candidate - 1):
                continue
            for _ in range(s - 1):
                x = pow(x, 2, candidate)
                if x == candidate - 1:
                    break
            else:
                break
        else:
            return candidate
    raise AssertionError("no prime found")


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return b"\x02" + _der_length(len(body)) + body


def _der_length(size: int) -> bytes:
    if size < 128:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


_RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d0101010500")  # OID 1.2.840.113549.1.1.1, NULL


@dataclass(frozen=True)
class Key:
    private_pem: bytes
    public_b64: str  # SubjectPublicKeyInfo, as in a DKIM key record's p=


def make_key(bits: int, seed: int) -> Key:
    rng = random.Random(seed)
    e = 65537
    for _ in range(100):
        p, q = _probable_prime(bits // 2, rng), _probable_prime(bits // 2, rng)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e and (p * q).bit_length() == bits:
            break
    n, d = p * q, pow(e, -1, phi)
    private = _der(
        0x30,
        b"".join(
            _der_integer(v) for v in (0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))
        ),
    )
    public = _der(0x30, _der_integer(n) + _der_integer(e))
    info = _der(0x30, _der(0x30, _RSA_ENCRYPTION) + _der(0x03, b"\x00" + public))
    lines = base64.encodebytes(private).decode().strip()
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{lines}\n-----END RSA PRIVATE KEY-----\n"
    return Key(pem.encode(), base64.b64encode(info).decode())
