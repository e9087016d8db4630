"""CRM tools: search with pagination, update validation, add (ID rule), delete."""

import pytest

from env_sim.workplace_assistant import call_tool
from env_sim.workplace_assistant.database import Database


@pytest.fixture
def db():
    return Database.fresh()


def test_search_customers(db):
    s = "customer_relationship_manager_search_customers"
    out = call_tool(db, s, {"customer_name": "quinn harris"})
    assert [c["customer_id"] for c in out["customers"]] == ["00000107"]
    assert out["customers"][0]["customer_phone"] is None  # empty CSV cell = NaN -> JSON null
    assert out["pagination"] == {"total_customers": 1, "page": 1, "page_size": 5, "total_pages": 1}
    prop = call_tool(
        db,
        s,
        {
            "product_interest": "consulting",
            "status": "Proposal",
            "last_contact_date_max": "2023-11-20 23:59:00",
            "page_size": 10,
        },
    )
    assert sorted(c["customer_id"] for c in prop["customers"]) == ["00000097", "00000101"]
    assert call_tool(
        db, s, {"product_interest": "Consulting", "status": "Proposal", "last_contact_date_max": "2023-11-09"}
    ) == ("No customers found.")
    assert call_tool(db, s, {"page": 2}) == "No search parameters provided. Please provide at least one parameter."
    assert call_tool(db, s, {"status": "Won", "page_size": "5"}) == (
        "Error executing tool 'customer_relationship_manager_search_customers': "
        "unsupported operand type(s) for +: 'int' and 'str'"
    )


def test_update_customer(db):
    u = "customer_relationship_manager_update_customer"
    assert call_tool(db, u, {"customer_id": "00000107", "field": "status", "new_value": "Won"}) == (
        "Customer updated successfully."
    )
    assert call_tool(db, u, {"customer_id": "00000107", "field": "customer_email", "new_value": "Q@X.COM"}) == (
        "Customer updated successfully."
    )
    rec = db.crm.record(1)
    assert (rec["customer_id"], rec["status"], rec["customer_email"]) == ("00000107", "Won", "q@x.com")
    assert call_tool(db, u, {"customer_id": "00000107", "field": "status", "new_value": "won"}) == (
        "Status not valid. Please choose from: 'Qualified', 'Won', 'Lost', 'Lead', 'Proposal'"
    )
    assert call_tool(db, u, {"customer_id": "00000107", "field": "product_interest", "new_value": "Food"}) == (
        "Product interest not valid. Please choose from: 'Software', 'Hardware', 'Services', 'Consulting', 'Training'"
    )
    assert call_tool(db, u, {"customer_id": "00000107", "field": "age", "new_value": "3"}).startswith(
        "Field not valid."
    )
    assert call_tool(db, u, {"customer_id": "00009999", "field": "notes", "new_value": "x"}) == "Customer not found."
    assert call_tool(db, u, {"customer_id": "00000107", "field": "notes"}) == (
        "Customer ID, field, or new value not provided."
    )


def test_add_customer_id_rule_and_defaults(db):
    a = "customer_relationship_manager_add_customer"
    assert (
        call_tool(
            db, a, {"customer_name": "Dakota Thomas", "assigned_to_email": "Nadia.Moreau@atlas.com", "status": "Lead"}
        )
        == "00000200"
    )
    rec = db.crm.record(200)
    assert rec["assigned_to_email"] == "nadia.moreau@atlas.com" and rec["notes"] == "" and rec["customer_email"] is None
    assert db.crm.labels == list(range(201))
    assert (
        call_tool(
            db,
            a,
            {
                "customer_name": "X",
                "assigned_to_email": "a@b.c",
                "status": "Won",
                "customer_email": "X@Y.Z",
                "notes": "hi",
            },
        )
        == "00000201"
    )
    assert db.crm.record(201)["customer_email"] == "x@y.z"
    assert call_tool(db, a, {"customer_name": "X", "status": "Won"}) == (
        "Please provide all required fields: customer_name, assigned_to_email, status."
    )


def test_delete_customer(db):
    d = "customer_relationship_manager_delete_customer"
    assert call_tool(db, d, {"customer_id": "00000014"}) == "Customer deleted successfully."
    assert call_tool(db, d, {"customer_id": "00000014"}) == "Customer not found."
    assert call_tool(db, d, {}) == "Customer ID not provided."
    assert len(db.crm) == 199


def test_search_after_adding_customer_without_email_raises_like_pandas(db):
    call_tool(
        db,
        "customer_relationship_manager_add_customer",
        {"customer_name": "No Mail", "assigned_to_email": "a@b.c", "status": "Lead"},
    )
    assert call_tool(db, "customer_relationship_manager_search_customers", {"customer_email": "x"}) == (
        "Error executing tool 'customer_relationship_manager_search_customers': "
        "Cannot mask with non-boolean array containing NA / NaN values"
    )
