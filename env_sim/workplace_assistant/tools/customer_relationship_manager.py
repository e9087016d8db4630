"""CRM toolkit: customers (search with pagination, update, add, delete)."""

from __future__ import annotations

from env_sim.workplace_assistant.tools.pandas_semantics import (
    GE,
    LE,
    array_contains,
    contains_mask,
    paginate,
    series_compare,
    series_eq,
    series_max,
)
from env_sim.workplace_assistant.tools.schema import function_schema

STATUSES = ["Qualified", "Won", "Lost", "Lead", "Proposal"]
PRODUCTS = ["Software", "Hardware", "Services", "Consulting", "Training"]


class CustomerRelationshipManagerTool:
    """The reference's CustomerRelationshipManagerTool over our tables (class and parameter names kept)."""

    def __init__(self, db):
        self._db = db

    def search_customers(
        self,
        customer_name=None,
        customer_email=None,
        product_interest=None,
        status=None,
        assigned_to_email=None,
        last_contact_date_min=None,
        last_contact_date_max=None,
        follow_up_by_min=None,
        follow_up_by_max=None,
        page=1,
        page_size=5,
    ):
        t = self._db.crm
        if not any(
            [
                customer_name,
                customer_email,
                product_interest,
                status,
                assigned_to_email,
                last_contact_date_min,
                last_contact_date_max,
                follow_up_by_min,
                follow_up_by_max,
            ]
        ):
            return "No search parameters provided. Please provide at least one parameter."
        rows = list(t.rows)
        ix = t.index_of
        for value, col in (
            (customer_name, "customer_name"),
            (customer_email, "customer_email"),
            (product_interest, "product_interest"),
            (status, "status"),
            (assigned_to_email, "assigned_to_email"),
        ):
            if value:
                mask = contains_mask([r[ix[col]] for r in rows], value, case=False)
                rows = [r for r, k in zip(rows, mask) if k]
        for value, col, op in (
            (last_contact_date_min, "last_contact_date", GE),
            (last_contact_date_max, "last_contact_date", LE),
            (follow_up_by_min, "follow_up_by", GE),
            (follow_up_by_max, "follow_up_by", LE),
        ):
            if value:
                mask = series_compare([r[ix[col]] for r in rows], value, op)
                rows = [r for r, k in zip(rows, mask) if k]
        customer_records = [dict(zip(t.columns, r)) for r in rows]
        total = len(customer_records)
        page, total_pages, start, end = paginate(total, page, page_size)
        if total > 0:
            return {
                "customers": customer_records[start:end],
                "pagination": {
                    "total_customers": total,
                    "page": page,
                    "page_size": page_size,
                    "total_pages": total_pages,
                },
            }
        return "No customers found."

    def update_customer(self, customer_id=None, field=None, new_value=None):
        if not customer_id or not field or not new_value:
            return "Customer ID, field, or new value not provided."
        if field == "status" and new_value not in STATUSES:
            return "Status not valid. Please choose from: 'Qualified', 'Won', 'Lost', 'Lead', 'Proposal'"
        if field == "product_interest" and new_value not in PRODUCTS:
            return (
                "Product interest not valid. Please choose from: 'Software', 'Hardware', 'Services', "
                "'Consulting', 'Training'"
            )
        if field in ["customer_email", "assigned_to_email"]:
            new_value = new_value.lower()
        t = self._db.crm
        ids = t.column("customer_id")
        if array_contains(ids, customer_id):
            if field in t.index_of:  # a dict lookup: an unhashable field raises like pandas' Index
                t.set_where(series_eq(ids, customer_id), field, new_value)
                return "Customer updated successfully."
            return (
                "Field not valid. Please choose from: 'customer_name', 'assigned_to_email', 'customer_email', "
                "'customer_phone', 'last_contact_date', 'product_interest', 'status', 'notes', 'follow_up_by'"
            )
        return "Customer not found."

    def add_customer(
        self,
        customer_name=None,
        assigned_to_email=None,
        status=None,
        customer_email=None,
        customer_phone=None,
        last_contact_date=None,
        product_interest=None,
        notes="",
        follow_up_by=None,
    ):
        if not all([customer_name, assigned_to_email, status]):
            return "Please provide all required fields: customer_name, assigned_to_email, status."
        assigned_to_email = assigned_to_email.lower()
        if customer_email:
            customer_email = customer_email.lower()
        t = self._db.crm
        new_id = str(int(series_max(t.column("customer_id"))) + 1).zfill(8)
        t.append(
            {
                "customer_id": new_id,
                "customer_name": customer_name,
                "customer_email": customer_email,
                "customer_phone": customer_phone,
                "last_contact_date": last_contact_date,
                "product_interest": product_interest,
                "status": status,
                "assigned_to_email": assigned_to_email,
                "notes": notes,
                "follow_up_by": follow_up_by,
            },
            renumber=True,
        )
        return new_id

    def delete_customer(self, customer_id=None):
        if not customer_id:
            return "Customer ID not provided."
        t = self._db.crm
        ids = t.column("customer_id")
        if not array_contains(ids, customer_id):
            return "Customer not found."
        t.keep([not hit for hit in series_eq(ids, customer_id)])
        return "Customer deleted successfully."


_ASSIGNEE = "Email address of the person assigned to the customer"

SCHEMAS = [
    function_schema(
        "customer_relationship_manager_search_customers",
        "Searches for customers based on the given parameters with pagination support.",
        [
            ("customer_name", "Name of the customer"),
            ("customer_email", "Email address of the customer"),
            ("product_interest", "Product interest of the customer"),
            ("status", "Current status of the customer"),
            ("assigned_to_email", _ASSIGNEE),
            ("last_contact_date_min", "Minimum last contact date. Format: YYYY-MM-DD"),
            ("last_contact_date_max", "Maximum last contact date. Format: YYYY-MM-DD"),
            ("follow_up_by_min", "Minimum follow up date. Format: YYYY-MM-DD"),
            ("follow_up_by_max", "Maximum follow up date. Format: YYYY-MM-DD"),
            ("page", "Page number of results to return", "integer"),
            ("page_size", "Number of customers per page", "integer"),
        ],
        [],
    ),
    function_schema(
        "customer_relationship_manager_update_customer",
        "Updates a customer record by ID.",
        [
            ("customer_id", "ID of the customer"),
            (
                "field",
                "Field to update. Available fields are: 'customer_name', 'assigned_to_email', 'customer_email', "
                "'customer_phone', 'last_contact_date', 'product_interest', 'status', 'notes', 'follow_up_by'",
            ),
            ("new_value", "New value for the field"),
        ],
        ["customer_id", "field", "new_value"],
    ),
    function_schema(
        "customer_relationship_manager_add_customer",
        "Adds a new customer record.",
        [
            ("customer_name", "Name of the customer"),
            ("assigned_to_email", _ASSIGNEE),
            ("status", "Current status of the customer. One of: 'Qualified', 'Won', 'Lost', 'Lead', 'Proposal'"),
            ("customer_email", "Email address of the customer"),
            ("customer_phone", "Phone number of the customer"),
            ("last_contact_date", "The last date the customer was contacted. Format: YYYY-MM-DD"),
            (
                "product_interest",
                "Product interest of the customer. One of: 'Software', 'Hardware', 'Services', "
                "'Consulting', 'Training'",
            ),
            ("notes", "Notes about the customer"),
            ("follow_up_by", "Date for the next follow up. Format: YYYY-MM-DD"),
        ],
        ["customer_name", "assigned_to_email", "status"],
    ),
    function_schema(
        "customer_relationship_manager_delete_customer",
        "Deletes a customer record by ID.",
        [("customer_id", "ID of the customer")],
        ["customer_id"],
    ),
]
