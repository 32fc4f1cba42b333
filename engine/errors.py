"""One exception root for everything Certus reports to a user.

The CLI catches only :class:`EngineError`, prints :meth:`EngineError.diagnostics` as one
line and exits with :attr:`EngineError.exit_code`. Foreign exceptions (YAML, Hydra, DVC,
nacl, OSError) are wrapped at the adapter boundary with ``raise ... from``.
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every error Certus raises on purpose."""

    exit_code = 1

    def diagnostics(self) -> str:
        return str(self)


class SpecError(EngineError):
    """The pipeline spec (or a config it refers to) is invalid."""

    exit_code = 2


class ConfigError(EngineError):
    """Hydra composition or an override failed."""

    exit_code = 2


class GraphError(SpecError):
    """The stage graph is invalid: a cycle, an output declared twice, a missing dep."""


class WorkspaceError(EngineError):
    """The workspace is not usable: no spec, a lock held by another process, a bad path."""


class LockHeldError(WorkspaceError):
    """Another coordinator holds the workspace lock."""

    exit_code = 3


class CacheError(EngineError):
    """The content-addressed cache lacks an object or holds a corrupted one."""


class HashMismatchError(CacheError):
    """A cache object or file does not hash to what it is recorded as."""


class StageFailedError(EngineError):
    """One or more stage commands exited non-zero."""


class ExecutorError(EngineError):
    """The executor cannot run stages: a Dask scheduler unreachable, a cluster that lacks a resource."""


class InterruptedRunError(EngineError):
    """The run was interrupted (Ctrl-C / SIGTERM); finished stages were kept."""

    exit_code = 130


class SignatureError(EngineError):
    """A signature is missing, malformed, or does not verify under the expected key."""


class KeyError_(EngineError):
    """A key file is missing, unreadable, or its passphrase is wrong."""


class LedgerError(EngineError):
    """The ledger is malformed, torn, or inconsistent with a checkpoint."""


class VerificationError(EngineError):
    """``certus verify`` found problems; the message lists them."""


class DatasetError(EngineError):
    """A dataset is unknown, unapproved, modified, expired, or not allowed for a stage."""


# --- signing, envelopes and trust (engine.provenance: dsse, signing, trust) --------------------


class EnvelopeFormatError(SignatureError):
    """A DSSE envelope is not well-formed JSON of the standard shape."""


class UnknownKeyError(SignatureError):
    """A signature names a key that the verifier does not trust."""


class BadSignatureError(SignatureError):
    """A signature does not verify under the key it names."""


class PayloadTypeError(SignatureError):
    """An envelope's payloadType is not the one the verifier expects."""


class TrustFileError(SignatureError):
    """The trust file is malformed, or a change to it would be invalid."""


class KeyRoleError(SignatureError):
    """A trusted key signed something its roles do not allow."""


class KeyNotValidError(SignatureError):
    """A signature was made outside its key's not_before / not_after window."""


class KeyRevokedError(SignatureError):
    """A signature was made at or after its key's revocation."""


class WrongPassphraseError(KeyError_):
    """A key file's passphrase does not open it."""


class KeyFileExistsError(KeyError_):
    """A key file is already there; keys are never overwritten."""


class KeyFilePermissionError(KeyError_):
    """A private key file is readable or writable by group or others."""


# --- model bundles (engine.release) ----------------------------------------------------------


class ReleaseError(EngineError):
    """A model bundle cannot be built: bad inputs, an existing bundle, a key that may not release."""


class BundleFormatError(ReleaseError):
    """A bundle's signature file is not a well-formed OMS v1.0 Sigstore bundle."""


class BundleVerificationError(ReleaseError):
    """``certus bundle verify`` found problems; the message names the first, each names a file."""


# --- serving and monitoring (engine.serve) ---------------------------------------------------


class ServeError(EngineError):
    """A deployment cannot be served (its bundle or chain does not verify, a bad serving config)."""


class DriftDetected(EngineError):
    """A monitor pass breached a threshold; the signed drift report is in the ledger (exit 3 for cron / CI)."""

    exit_code = 3


# --- the shared ledger log (engine.adapters.shared_log) --------------------------------------


class SharedLogError(EngineError):
    """A shared ledger log (git ref or PostgreSQL) failed: a refused write, a malformed log, bad config."""


class Unreachable(SharedLogError):
    """A shared log cannot be reached (no such remote, connection refused): append locally, sync later."""
