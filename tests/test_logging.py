import logging

from my_ml_backend.settings import Settings
from my_ml_backend.telemetry.logs import RedactSecrets, configure_logging, mask

KEY = "ms-0a1b2c3d-4e5f-4a6b-8c7d-0123456789ab"


def test_redaction_masks_key_and_credentials() -> None:
    r = RedactSecrets([KEY])
    assert KEY not in r.redact(f"calling with {KEY}")
    assert "sk-abcdefgh1234" not in r.redact("key sk-abcdefgh1234 used")
    assert "bWx1c2VyOm1scGFzcw==" not in r.redact("{'Authorization': 'Basic bWx1c2VyOm1scGFzcw=='}")
    assert "tok123456789" not in r.redact("Authorization: Bearer tok123456789")
    assert "ms-0a1b2c3d-4e5f-4a6b-8c7d-0123456789ff" not in RedactSecrets().redact(
        "other ms-0a1b2c3d-4e5f-4a6b-8c7d-0123456789ff"
    )


def test_debug_switch_and_file_log_are_redacted(tmp_path) -> None:
    configure_logging(Settings(api_key=KEY, debug=True, log_dir=tmp_path))
    try:
        assert logging.getLogger().level == logging.DEBUG
        logging.getLogger("my_ml_backend.test").debug("header %s", {"Authorization": f"Bearer {KEY}"})
        try:
            raise RuntimeError(f"boom {KEY}")
        except RuntimeError:
            logging.getLogger("my_ml_backend.test").exception("failed")
        for h in logging.getLogger().handlers:
            h.flush()
        text = (tmp_path / "ml_backend.log").read_text(encoding="utf-8")
        assert "header" in text and "boom" in text
        assert KEY not in text
    finally:
        configure_logging(Settings(log_dir=tmp_path))
    assert logging.getLogger().level == logging.INFO


def test_mask() -> None:
    assert mask(KEY) == "ms-0…89ab"
    assert mask("") == "(未设置 / not set)"
