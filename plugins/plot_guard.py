"""datasette-plot only where it can draw. Its body script, added to every page, fetches the page's URL as JSON
(`_size=max`) and reads its first row, then inserts its chart after the SQL or filter form: on a page without a
result table (an error page, a query or filter with no rows, a row page, the index) it makes that extra request and
throws ("Cannot read properties of undefined (reading '0')"). So the script runs only where the page shows a
result table with rows and one of those forms, which is what it assumes."""

from datasette import hookimpl

PLOT_SCRIPT = "/datasette-plot/"   # (its script imports its bundle from /-/static-plugins/datasette-plot/)
WHERE_IT_DRAWS = ("document.querySelector('table.rows-and-columns tbody tr') "
                  "&& document.querySelector('form.sql, form.filters')")


@hookimpl(wrapper=True)
def extra_body_script():
    scripts = yield
    return [f"if ({WHERE_IT_DRAWS}) {{ {script} }}" if isinstance(script, str) and PLOT_SCRIPT in script else script
            for script in scripts]
