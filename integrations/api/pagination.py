from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    # 500 rows keeps one page under ~1 MB of JSON for the widest record (time entries).
    max_page_size = 500
