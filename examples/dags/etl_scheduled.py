"""Airflow DAG. Example deck with a daily schedule (catchup off): scheduled runs hold logical dates too."""

from _etl import make_etl_dag

dag = make_etl_dag("etl_scheduled", default_sleep=1, schedule="@daily")
