"""customer-journeys: Kafka → Beam → warehouse pipeline for channel attribution and retention.

Direct dependencies are pinned here; constraints.txt pins the whole resolved tree (make uses it).
"""
from setuptools import find_packages, setup

# deploy/dataflow: the part of apache-beam[gcp] that Beam's DataflowRunner imports to build a job, and what the
# Flex Template's launcher uses.
DATAFLOW = [
    "google-cloud-dataflow-client==0.13.0",
    "google-cloud-storage==3.17.1",
    # With google-cloud-storage, `import apache_beam` loads Beam's BigQuery client, which without apitools logs a
    # warning on the root logger: that configures logging before `journeys` can.
    "google-apitools==0.5.31",
    "google-cloud-secret-manager==2.32.0",  # deploy/dataflow/main.py reads the template's secrets at launch
]

setup(
    name="customer-journeys",
    version="0.1.0",
    description="Streaming customer-journey analytics: social, web and orders joined per customer on Apache Beam.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipelines*", "schemas*", "transforms*"]),
    package_data={"schemas": ["topics/*.avsc", "topics/registry.json", "tables/*.json", "views/*.sql", "TABLES.md"]},
    install_requires=[
        "apache-beam==2.77.0",
        "kafka-python==3.0.12",
        "crc32c==2.9.post0",  # kafka-python checks record CRCs in pure Python without it: a third of read time
        "fastavro==1.13.1",
        "google-cloud-bigquery==3.47.0",
        "great-expectations==1.24.1",
        "duckdb==1.5.5",
        "plotly==7.1.0",  # journeys report: its charts, and plotly.js written beside the page
        "mistune==3.4.0",  # journeys report: the tables' Markdown documentation as HTML
        "numpy==2.4.6",  # the data-driven models' solves
        "scipy==1.17.1",  # sparse solves of higher-order Markov chains (thousands of states)
    ],
    extras_require={
        "dataflow": DATAFLOW,
        "dev": [
            *DATAFLOW,  # tests/test_dataflow_template.py builds the Dataflow job
            "pytest==9.2.0",
            "hypothesis==6.170.15",
            "bqemulator==1.4.0",
            "duckdb-extension-spatial==1.5.5",
            "playwright==1.65.2",  # drives Debian's chromium over CDP in the report test; downloads no browser
        ],
    },
    entry_points={"console_scripts": ["journeys=pipelines.cli:main"]},
)
