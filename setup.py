from setuptools import setup

setup(
    name="lmtpd",
    version="0.1.0",
    description="Mailing-list delivery agent for clubs: Postfix in front, LMTP, SQLite queue",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    python_requires=">=3.11",
    # migrations/ lives at the top of the repository and installs as lmtpd.migrations
    packages=["lmtpd", "lmtpd.cli", "lmtpd.store", "lmtpd.migrations"],
    package_dir={"lmtpd.migrations": "migrations"},
    package_data={"lmtpd.migrations": ["*.sql"]},
    install_requires=[
        "aiosmtpd>=1.4.6,<1.5",  # lmtpd/lmtp.py relies on internals checked against 1.4.6
        "aiosqlite>=0.20",
        "aiosmtplib>=3.0",
        "dnspython>=2.6",
        "click>=8.1",
        "dkimpy>=1.1",  # DKIM verification (and later signing)
        "pyspf>=2.0.14",  # SPF evaluation
        "publicsuffixlist>=1.0",  # organizational domains for alignment, list shipped in the package
        "flufl.bounce>=4.0",  # reading bounces that are not RFC 3464 reports
        "cryptography>=41",  # `lmtpd dkim keygen`
        "authres>=1.2",  # reading Authentication-Results (RFC 8601) of our own MTA
        "python-dateutil>=2.8",  # reminders: RFC 5545 RRULE expansion (dateutil.rrule), not hand-written
        "croniter>=2.0",  # reminders: cron lines, for administrators who think in crontab
        "icalendar>=5.0",  # reminders: reading the club's calendar file (RFC 5545)
        "recurring-ical-events>=2.0",  # reminders: a calendar's series with EXDATE, moved and cancelled occurrences
        "tzdata",  # reminders: zoneinfo's time zones where the system has none
        "markdown-it-py>=3.0",  # reminders: a Markdown body's HTML alternative (CommonMark, raw HTML escaped)
        "babel>=2.12",  # reminders: weekday and month names and date formats in the list's language (CLDR)
        "prometheus-client>=0.20",  # [metrics]: the official exposition format, HTTP endpoint and textfile
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-asyncio>=0.24", "trustme>=1.1", "ruff"],
    },
    entry_points={"console_scripts": ["lmtpd = lmtpd.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Communications :: Email :: Mailing List Servers",
    ],
)
